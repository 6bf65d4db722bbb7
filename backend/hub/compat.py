"""What each supported huggingface_hub release provides: the version floor and its HTTP client's errors."""

from __future__ import annotations

import importlib

import huggingface_hub

MIN_VERSION = (1, 0)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _version(huggingface_hub.__version__) < MIN_VERSION:
    raise ImportError(
        f"backend.hub needs huggingface_hub >= {'.'.join(map(str, MIN_VERSION))} (its httpx-based client), "
        f"found {huggingface_hub.__version__}: run `pip install -r requirements.txt`.")


def _transport_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub 1.x talks through httpx, 2.x through httpx2: catch whichever client is
    # installed (both may be), so a dropped connection is a NetworkError under either.
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except ImportError:
            continue
    if not found:
        raise ImportError(f"huggingface_hub {huggingface_hub.__version__} is installed without its HTTP "
                          "client (httpx or httpx2): run `pip install -r requirements.txt`.")
    return tuple(found)


TRANSPORT_ERRORS = _transport_errors()
