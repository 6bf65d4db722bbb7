"""Hub download values: repo references, listings, progress reports and results."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RepoRef:
    repo_id: str
    branch: str = "main"

    @property
    def folder_name(self) -> str:
        name = self.repo_id.replace("/", "_")
        return name if self.branch == "main" else f"{name}_{self.branch}"


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    blob_id: str
    sha256: str | None  # set for LFS files: the Hub's own content hash


@dataclass(frozen=True)
class RepoListing:
    ref: RepoRef
    commit: str
    files: tuple[RemoteFile, ...]    # what a download fetches
    skipped: tuple[RemoteFile, ...]  # present on the Hub, left out by the selection rules

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class DownloadProgress:
    filename: str      # the file this update is about ("" before the first byte)
    file_done: int
    file_total: int
    done: int          # bytes over all files, including ones resumed from an earlier run
    total: int
    files_done: int
    files_total: int
    speed: float       # bytes/s over the last few seconds
    eta: float | None  # seconds; None until a speed is known
    finished: bool = False


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    ref: RepoRef
    commit: str
    files: tuple[str, ...]
    up_to_date: bool = False  # nothing fetched: the folder already held this commit
    # file -> sha256 of the verified bytes (as recorded in the metadata file when up to date)
    sha256: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HubMetadata:
    """What a download recorded in the model folder: where from, which commit, the file hashes."""
    url: str
    branch: str
    commit: str
    date: str
    sha256: Mapping[str, str]


ProgressCallback = Callable[[DownloadProgress], None]
