"""Which repo, which folder, which files: repo names, the destination folder, the Hub listing and the file rules."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import HfApi, RepoFile, constants

from backend.hub.errors import FileNotFoundOnHubError, InvalidRepoNameError, PickleWeightsError, translate_error
from backend.hub.metadata import read_metadata
from backend.hub.types import RemoteFile, RepoListing, RepoRef

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
        if host not in _HUB_HOSTS | {urlsplit(endpoint_url(None)).hostname}:
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
    # a/b_c and a_b/c (or user/model:x and user/model_x) share a folder name: never let one replace the other
    recorded = read_metadata(path)
    if recorded is not None and recorded.url:
        repo_id = "/".join(recorded.url.rstrip("/").split("/")[-2:])
        if (repo_id.lower(), recorded.branch or "main") != (ref.repo_id.lower(), ref.branch):
            raise InvalidRepoNameError(
                f"{path.name} already holds {repo_id} (branch {recorded.branch or 'main'}); downloading "
                f"{ref.repo_id}:{ref.branch} there would overwrite it. Rename or remove that folder first.")
    return path


def list_files(repo: str | RepoRef, *, token: str | None = None, endpoint: str | None = None,
               allow_pickle: bool = False, allow_remote_code: bool = False) -> RepoListing:
    """Resolve the branch to a commit and list the files a download would fetch, with sizes."""
    ref = parse_repo(repo) if isinstance(repo, str) else repo
    endpoint = endpoint_url(endpoint)
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


def is_weights(name: str) -> bool:
    """A weights file (safetensors or pickle): what a model served by a remote engine does not need here."""
    return name.endswith((".safetensors",) + _PICKLE_EXTS)


def without_weights(listing: RepoListing) -> RepoListing:
    """The listing with its weights moved to `skipped`: tokenizer, configs and docs, all the app reads of a
    model that a vLLM server runs."""
    weights = tuple(f for f in listing.files if is_weights(f.path))
    return dataclasses.replace(listing, files=tuple(f for f in listing.files if f not in weights),
                               skipped=listing.skipped + weights)


def _is_safe(part: str) -> bool:
    return bool(_NAME.fullmatch(part)) and ".." not in part


def endpoint_url(endpoint: str | None) -> str:
    # read HF_ENDPOINT now, not at huggingface_hub's import, so a later-set mirror is honoured
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def pick_files(listing: RepoListing, specific: Sequence[str], allow_pickle: bool,
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


