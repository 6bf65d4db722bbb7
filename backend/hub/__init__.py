"""Hub downloads: list a repo's files, download them resumably and verified, read back what was recorded.

The public surface; callers write `from backend import hub` and use `hub.<name>`.
"""

from backend.hub.download import STAGING_DIR, DownloadJob, download, start_download
from backend.hub.errors import (
    AccessDeniedError, BranchNotFoundError, ChecksumError, DiskFullError, DownloadCancelled, DownloadError,
    FileNotFoundOnHubError, InvalidRepoNameError, NetworkError, PickleWeightsError, RepoNotFoundError,
    translate_error,
)
from backend.hub.metadata import METADATA_FILE, read_metadata
from backend.hub.repo import destination, is_weights, list_files, parse_repo, select_files, without_weights
from backend.hub.types import (
    DownloadProgress, DownloadResult, HubMetadata, ProgressCallback, RemoteFile, RepoListing, RepoRef,
)

__all__ = [
    "STAGING_DIR", "METADATA_FILE",
    "parse_repo", "destination", "list_files", "select_files", "is_weights", "without_weights",
    "download", "start_download", "DownloadJob",
    "read_metadata", "translate_error",
    "RepoRef", "RemoteFile", "RepoListing", "DownloadProgress", "DownloadResult", "HubMetadata", "ProgressCallback",
    "DownloadError", "InvalidRepoNameError", "AccessDeniedError", "RepoNotFoundError", "BranchNotFoundError",
    "FileNotFoundOnHubError", "PickleWeightsError", "NetworkError", "DiskFullError", "DownloadCancelled",
    "ChecksumError",
]
