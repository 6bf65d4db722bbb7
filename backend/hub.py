"""Hub downloads: repo names, file lists, resumable verified downloads into the models folder."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from filelock import FileLock, Timeout
from huggingface_hub import HfApi, RepoFile, constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers

from backend.hub_types import (  # noqa: F401  (re-exported: callers use hub.<Error>)
    AccessDeniedError, BranchNotFoundError, ChecksumError, DiskFullError, DownloadCancelled, DownloadError,
    DownloadProgress, DownloadResult, FileNotFoundOnHubError, InvalidRepoNameError, NetworkError,
    PickleWeightsError, ProgressCallback, RemoteFile, RepoListing, RepoNotFoundError, RepoRef, translate_error,
)

STAGING_DIR = ".downloads"  # hidden, so model lists (which skip dot-folders) never show a partial model
METADATA_FILE = "huggingface-metadata.txt"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_HUB_HOSTS = {"huggingface.co", "www.huggingface.co", "hf.co"}
_PICKLE_EXTS = (".bin", ".pt")
_TOKENIZER_EXTS = (".model", ".tiktoken")




def parse_repo(name: str) -> RepoRef:
    """`user/model`, `user/model:branch` or `https://huggingface.co/user/model[/tree/branch]`."""
    text = name.strip()
    branch = "main"
    if "://" in text:
        parts = urlsplit(text)
        host = parts.hostname or ""
        if host not in _HUB_HOSTS | {urlsplit(_endpoint(None)).hostname}:
            raise InvalidRepoNameError(f"{name!r} is not a Hugging Face URL; give user/model instead.")
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) == 4 and segments[2] == "tree":
            segments, branch = segments[:2], segments[3]
        text = "/".join(segments)
    elif ":" in text:
        text, branch = text.rsplit(":", 1)
    pieces = text.split("/")
    if len(pieces) != 2 or not all(_is_safe(p) for p in pieces) or not _is_safe(branch):
        raise InvalidRepoNameError(
            f"Invalid model name {name!r}: use user/model or user/model:branch "
            "(letters, digits, '.', '_', '-'; no '..', no extra '/').")
    return RepoRef(f"{pieces[0]}/{pieces[1]}", branch)


def destination(ref: RepoRef, models_dir: str | Path) -> Path:
    """The model's folder; never anywhere but directly inside models_dir."""
    root = Path(models_dir).resolve()
    path = (root / ref.folder_name).resolve()
    if path.parent != root:
        raise InvalidRepoNameError(f"{ref.repo_id!r} would be written outside {root}.")
    return path


def list_files(repo: str | RepoRef, *, token: str | None = None, endpoint: str | None = None,
               allow_pickle: bool = False, allow_remote_code: bool = False) -> RepoListing:
    """Resolve the branch to a commit and list the files a download would fetch, with sizes."""
    ref = parse_repo(repo) if isinstance(repo, str) else repo
    endpoint = _endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        commit = api.model_info(ref.repo_id, revision=ref.branch).sha
        entries = list(api.list_repo_tree(ref.repo_id, revision=commit))
    except Exception as exc:
        raise translate_error(exc, ref, endpoint) from exc
    # only top-level files: a loader reads one flat folder, and nested paths need no escaping rules
    remote = [RemoteFile(e.path, e.size, e.blob_id, e.lfs.sha256 if e.lfs else None)
              for e in entries if isinstance(e, RepoFile) and "/" not in e.path]
    wanted = set(select_files([f.path for f in remote], allow_pickle, allow_remote_code))
    return RepoListing(ref, commit, tuple(f for f in remote if f.path in wanted),
                       tuple(f for f in remote if f.path not in wanted))


def select_files(names: Sequence[str], allow_pickle: bool = False,
                 allow_remote_code: bool = False) -> list[str]:
    """Safetensors before pickles; configs, tokenizer and docs; code only when asked for."""
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    picked = []
    for n in names:
        weights = n.endswith(".safetensors") or (
            n.endswith(_PICKLE_EXTS) and allow_pickle and not has_safetensors)
        support = n.endswith((".json", ".txt", ".md") + _TOKENIZER_EXTS) or n.startswith("tokenizer")
        if weights or support or (n.endswith(".py") and allow_remote_code):
            picked.append(n)
    return picked


def download(repo: str | RepoRef, models_dir: str | Path = "models", *, token: str | None = None,
             endpoint: str | None = None, specific_files: Sequence[str] = (), threads: int = 4,
             allow_pickle: bool = False, allow_remote_code: bool = False,
             on_progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
             retries: int = 4, backoff: float = 1.0) -> DownloadResult:
    """Fetch a repo into models_dir/<user>_<model>[_<branch>]; blocks. Raises DownloadError."""
    ref = parse_repo(repo) if isinstance(repo, str) else repo
    dest = destination(ref, models_dir)
    endpoint = _endpoint(endpoint)
    listing = list_files(ref, token=token, endpoint=endpoint, allow_pickle=allow_pickle,
                         allow_remote_code=allow_remote_code)
    files = _pick(listing, specific_files, allow_pickle, allow_remote_code)
    if _is_up_to_date(dest, listing.commit, files):
        size = sum(f.size for f in files)
        if on_progress:
            on_progress(DownloadProgress("", 0, 0, size, size, len(files), len(files), 0.0, 0.0, True))
        return DownloadResult(dest, ref, listing.commit, tuple(f.path for f in files), up_to_date=True)
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
        _write_metadata(staging / METADATA_FILE, ref, endpoint, listing.commit, hashes)
        _install(staging, dest, whole=not specific_files)
    finally:
        _drop_if_empty(staging)
        lock.release()
    return DownloadResult(dest, ref, listing.commit, tuple(f.path for f in files))


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
        self.tracker = _Tracker(files, staging, on_progress)

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


class _Tracker:
    """Turns byte counts from concurrent downloads into DownloadProgress reports."""

    def __init__(self, files: Sequence[RemoteFile], staging: Path, on_progress: ProgressCallback | None):
        self.on_progress = on_progress
        self.lock = threading.Lock()
        self.totals = {f.path: f.size for f in files}
        self.done = {f.path: _staged_size(staging, f) for f in files}
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


def _is_safe(part: str) -> bool:
    return bool(_NAME.fullmatch(part)) and ".." not in part


def _endpoint(endpoint: str | None) -> str:
    # read HF_ENDPOINT now, not at huggingface_hub's import, so a later-set mirror is honoured
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _pick(listing: RepoListing, specific: Sequence[str], allow_pickle: bool,
          allow_remote_code: bool) -> list[RemoteFile]:
    everything = {f.path: f for f in listing.files + listing.skipped}
    if specific:
        missing = [n for n in specific if n not in everything]
        if missing:
            raise FileNotFoundOnHubError(
                f"{', '.join(missing)} not found in {listing.ref.repo_id} ({listing.ref.branch}); "
                f"files there: {', '.join(sorted(everything))}.")
        unsafe = [n for n in specific if (n.endswith(_PICKLE_EXTS) and not allow_pickle)
                  or (n.endswith(".py") and not allow_remote_code)]
        if unsafe:
            raise PickleWeightsError(f"{', '.join(unsafe)} can run code when loaded; pass "
                                     "--allow-pickle (weights) or --allow-remote-code (*.py) to fetch it.")
        return [everything[n] for n in specific]
    if not any(f.path.endswith(".safetensors") for f in listing.files) and any(
            f.path.endswith(_PICKLE_EXTS) for f in listing.skipped):
        raise PickleWeightsError(
            f"{listing.ref.repo_id} has only pickle weights (.bin/.pt), which can run code when "
            "loaded. Prefer a safetensors repo, or pass --allow-pickle if you trust it.")
    if not listing.files:
        raise FileNotFoundOnHubError(f"{listing.ref.repo_id} has no model files to download.")
    return list(listing.files)


def _is_up_to_date(dest: Path, commit: str, files: Sequence[RemoteFile]) -> bool:
    meta = dest / METADATA_FILE
    if not meta.is_file() or f"commit: {commit}\n" not in meta.read_text(encoding="utf-8"):
        return False
    return all((dest / f.path).is_file() and (dest / f.path).stat().st_size == f.size for f in files)


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


def _staged_size(staging: Path, f: RemoteFile) -> int:
    for p in (staging / f.path, staging / (f.path + ".incomplete")):
        if p.is_file():
            return min(p.stat().st_size, f.size)
    return 0


def _check_disk_space(staging: Path, files: Sequence[RemoteFile]) -> None:
    needed = sum(f.size - _staged_size(staging, f) for f in files)
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


def _write_metadata(path: Path, ref: RepoRef, endpoint: str, commit: str, hashes: dict[str, str]) -> None:
    lines = [f"url: {endpoint}/{ref.repo_id}", f"branch: {ref.branch}", f"commit: {commit}",
             f"download date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}", "sha256sum:"]
    lines += [f"    {sha}  {name}" for name, sha in sorted(hashes.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


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
