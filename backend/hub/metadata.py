"""The metadata file a download leaves in the model folder: written once per download, read by `read_metadata`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from backend.hub.types import HubMetadata, RepoRef

# text-generation-webui's name and layout, so folders downloaded by either app read the same
METADATA_FILE = "huggingface-metadata.txt"
_FIELDS = {"url": "url", "branch": "branch", "commit": "commit", "download date": "date"}


def write_metadata(folder: Path, ref: RepoRef, endpoint: str, commit: str, sha256: Mapping[str, str]) -> None:
    lines = [f"url: {endpoint}/{ref.repo_id}", f"branch: {ref.branch}", f"commit: {commit}",
             f"download date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}", "sha256sum:"]
    lines += [f"    {sha}  {name}" for name, sha in sorted(sha256.items())]
    (folder / METADATA_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_metadata(folder: str | Path) -> HubMetadata | None:
    """What the last download into `folder` recorded; None if no download wrote the folder."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return None
    values = dict.fromkeys(_FIELDS.values(), "")
    sha256 = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in _FIELDS:
            values[_FIELDS[key]] = value.strip()
            continue
        parts = line.split()
        if line.startswith("    ") and len(parts) == 2 and len(parts[0]) == 64:
            sha256[parts[1]] = parts[0]
    return HubMetadata(sha256=sha256, **values)
