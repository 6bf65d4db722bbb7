"""Hub download errors (each message gives the fix) and the translation of huggingface_hub's errors into them."""

from __future__ import annotations

import errno

from huggingface_hub.errors import (
    GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
    RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
)

from backend.errors import UserError
from backend.hub.compat import TRANSPORT_ERRORS
from backend.hub.types import RepoRef


class DownloadError(UserError):
    """Base of every download failure; the message says what to do about it."""


class InvalidRepoNameError(DownloadError, ValueError): ...
class AccessDeniedError(DownloadError): ...        # 401/403: gated, private or bad token
class RepoNotFoundError(DownloadError): ...
class BranchNotFoundError(DownloadError): ...
class FileNotFoundOnHubError(DownloadError): ...
class PickleWeightsError(DownloadError): ...
class NetworkError(DownloadError): ...
class DiskFullError(DownloadError): ...
class DownloadCancelled(DownloadError): ...


class ChecksumError(DownloadError):
    def __init__(self, filename: str, expected: str, actual: str) -> None:
        super().__init__(f"Checksum mismatch for {filename}: expected {expected}, got {actual}. "
                         "The corrupt file was deleted; run the download again.")
        self.filename = filename


def translate_error(exc: BaseException, ref: RepoRef, endpoint: str, filename: str | None = None) -> DownloadError:
    """Map huggingface_hub/httpx/OS errors to a DownloadError whose message gives the fix."""
    page, what = f"{endpoint}/{ref.repo_id}", f" ({filename})" if filename else ""
    status = exc.response.status_code if isinstance(exc, HfHubHTTPError) and exc.response is not None else None
    if isinstance(exc, DownloadError):
        return exc
    if isinstance(exc, GatedRepoError) or status in (401, 403) and not isinstance(exc, RepositoryNotFoundError):
        hint = ("your token's account has no access yet" if status == 403 else "no valid token was sent")
        return AccessDeniedError(
            f"{ref.repo_id} is gated or private and {hint} (HTTP {status}){what}. Open {page}, log in and "
            "accept the licence, then give a read token: --token / the token field, the HF_TOKEN "
            "environment variable, or `hf auth login`.")
    if isinstance(exc, RevisionNotFoundError):
        return BranchNotFoundError(f"Branch {ref.branch!r} not found in {ref.repo_id} (HTTP 404). "
                                   f"Check the branch names on {page}/tree/main, or drop ':{ref.branch}'.")
    if isinstance(exc, RepositoryNotFoundError):
        return RepoNotFoundError(f"Repository {ref.repo_id} not found at {endpoint} (HTTP {status}). Check "
                                 "the spelling (user/model); if it is private, give a token.")
    if isinstance(exc, RemoteEntryNotFoundError):
        return FileNotFoundOnHubError(f"File{what} not found in {ref.repo_id} at branch {ref.branch} (HTTP 404).")
    if isinstance(exc, OfflineModeIsEnabled):
        return NetworkError("HF_HUB_OFFLINE is set: unset it to download.")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DiskFullError(f"Disk full while writing{what}. Free some space and run again to resume.")
    first_line = next((line for line in str(exc).splitlines() if line.strip()), repr(exc))
    cut_short = isinstance(exc, OSError) and "Consistency check failed" in str(exc)
    if (cut_short or isinstance(exc, (*TRANSPORT_ERRORS, LocalEntryNotFoundError))
            or status is not None and (status >= 500 or status in (408, 429))):
        return NetworkError(f"Could not download from {endpoint}{what}: {first_line} Check your connection, "
                            "proxy and HF_ENDPOINT; run again to resume.")
    return DownloadError(f"Download of {ref.repo_id}{what} failed: {first_line}")
