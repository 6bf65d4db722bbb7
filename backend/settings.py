"""App defaults from settings.yaml and per-model saved settings in models/config-user.yaml."""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from backend.errors import UserError

USER_FILE = "config-user.yaml"
LOAD_KEYS = ("kernel", "device", "dtype", "compile")
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "typical_p",
                   "repetition_penalty", "no_repeat_ngram_size", "seed", "stop", "context_length")
MODEL_KEYS = LOAD_KEYS + GENERATION_KEYS + ("mode", "fim_order", "assistant_preamble")

BUILTIN_DEFAULTS: dict[str, Any] = {
    "kernel": "auto", "device": "auto-detect", "dtype": "auto", "compile": "auto",
    "max_new_tokens": 128, "temperature": 0.2, "top_p": 0.95, "top_k": 0, "min_p": 0.0, "typical_p": 1.0,
    "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "seed": -1, "stop": [], "context_length": 0,
    "mode": "completion", "fim_order": "psm",
}


class SettingsError(UserError, ValueError):
    """A settings file that cannot be used; it has been kept (moved aside) and the message says where."""


def _read_yaml(path: Path) -> dict:
    """The mapping in `path`; a corrupt file is moved aside (never overwritten) and reported."""
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        data, problem = None, f"it is not valid YAML ({str(exc).splitlines()[0]})"
    else:
        problem = None if isinstance(data, dict) or data is None else f"it holds a {type(data).__name__}, not a mapping"
    if problem:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(aside)
        raise SettingsError(f"{path}: {problem}. It was moved to {aside.name} so nothing is lost; fix it and "
                            f"move it back, or keep the fresh defaults.")
    return data or {}


def write_yaml_atomic(path: Path, data: dict) -> None:
    """Write through a temp file in the same folder and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yaml.safe_dump(data, fh, sort_keys=True, allow_unicode=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclasses.dataclass
class Settings:
    """Defaults for every model, plus what the user saved per model folder."""
    defaults: dict[str, Any]
    user_file: Path
    warnings: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def load(cls, settings_file: str | os.PathLike | None, models_dir: str | os.PathLike) -> "Settings":
        warnings: list[str] = []
        defaults = dict(BUILTIN_DEFAULTS)
        if settings_file:
            try:
                defaults.update(_read_yaml(Path(settings_file)))
            except SettingsError as exc:
                warnings.append(str(exc))
        return cls(defaults, Path(models_dir) / USER_FILE, warnings)

    def _all_saved(self) -> dict:
        saved = _read_yaml(self.user_file)
        return {str(k): v for k, v in saved.items() if isinstance(v, dict)}

    def saved_for(self, model: str) -> dict[str, Any]:
        """Only what was saved for `model` (empty if nothing)."""
        try:
            return dict(self._all_saved().get(model, {}))
        except SettingsError as exc:
            self.warnings.append(str(exc))
            return {}

    def for_model(self, model: str) -> dict[str, Any]:
        """Defaults overlaid with the model's saved settings: never another model's."""
        merged = dict(self.defaults)
        merged.update({k: v for k, v in self.saved_for(model).items() if k in MODEL_KEYS})
        return merged

    def save_for_model(self, model: str, values: dict[str, Any]) -> dict[str, Any]:
        """Store the known keys of `values` for `model`; other models' entries are kept as they are."""
        everything = self._all_saved()    # raises SettingsError (file moved aside) rather than overwrite
        entry = {k: _plain(v) for k, v in values.items() if k in MODEL_KEYS}
        everything[model] = entry
        write_yaml_atomic(self.user_file, everything)
        return entry

    def take_warnings(self) -> list[str]:
        out, self.warnings = self.warnings, []
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value
