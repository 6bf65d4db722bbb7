"""The settings' `engine` key → the engine object: the local Engine, or a RemoteEngine on vLLM servers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.engine import Engine
from backend.errors import UserError
from backend.remote.engine import RemoteEngine

ENGINES = ("local", "remote")


def parse_urls(value: Any) -> list[str]:
    """remote_urls as a list, or one string of comma-separated URLs (as --remote-engine takes them)."""
    if isinstance(value, str):
        value = value.split(",")
    return [str(u).strip() for u in value or [] if str(u).strip()]


def make_engine(models_dir: str | Path, values: dict[str, Any]) -> Engine | RemoteEngine:
    kind = values.get("engine", "local")
    if kind not in ENGINES:
        raise UserError(f"settings: 'engine' is {kind!r}; use 'local' (generate in this process) or 'remote' "
                        f"(generate on the vLLM servers in remote_urls).")
    if kind == "local":
        return Engine(models_dir)
    return RemoteEngine(models_dir, parse_urls(values.get("remote_urls")), values.get("remote_api_key") or None,
                        values.get("remote_model") or None, float(values.get("remote_timeout") or 60.0))
