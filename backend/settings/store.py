"""The settings files: the app's defaults (settings.yaml) and per-model saved settings (config-user.yaml)."""
from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from backend.settings.table import DEFAULTS, MODEL_KEYS, SERVER_KEYS, ModelSettings, SettingsError, check_value

USER_FILE = "config-user.yaml"
# libyaml's parser when present: a 50 MB file takes seconds, not half a minute
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> dict:
    """The mapping in `path`; a corrupt file is moved aside (never overwritten) and reported."""
    if not path.is_file():
        return {}
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as exc:   # unreadable (permissions): report, never stop the app
        raise SettingsError(f"{path}: cannot be read ({exc.strerror}); the built-in defaults are used.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        data, problem = None, f"it is not valid YAML ({str(exc).splitlines()[0]})"
    else:
        problem = None if isinstance(data, dict) or data is None else f"it holds a {type(data).__name__}, not a mapping"
    if problem:
        # unique, so a second corrupt file in the same second never replaces the first one set aside
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}")
        try:
            path.rename(aside)
        except OSError as exc:   # a read-only folder: report, never stop the app
            raise SettingsError(f"{path}: {problem}, and it could not be moved aside ({exc.strerror}); fix "
                                f"or remove it. The built-in defaults are used meanwhile.") from None
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


def checked(values: Mapping[str, Any], source: str, warnings: list[str],
            keys: tuple[str, ...] = MODEL_KEYS) -> dict[str, Any]:
    """The `keys` of `values` whose values pass the table's rules; each bad one becomes a warning."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in keys or value is None:
            continue
        try:
            out[key] = check_value(key, value)
        except SettingsError as exc:
            warnings.append(f"{source}: {exc}; the default is used instead.")
    return out


@dataclasses.dataclass
class Settings:
    """Defaults for every model, plus what the user saved per model folder (one writer, cached reads)."""
    defaults: dict[str, Any]
    user_file: Path
    warnings: list[str] = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)
    _cache: tuple[Any, dict, SettingsError | None] | None = dataclasses.field(default=None, repr=False)
    _seen: set[str] = dataclasses.field(default_factory=set, repr=False)

    @classmethod
    def load(cls, settings_file: str | os.PathLike | None, models_dir: str | os.PathLike) -> "Settings":
        warnings: list[str] = []
        defaults = dict(DEFAULTS)
        if settings_file:
            try:
                defaults.update(checked(_read_yaml(Path(settings_file)), Path(settings_file).name, warnings,
                                        MODEL_KEYS + SERVER_KEYS))
            except SettingsError as exc:
                warnings.append(str(exc))
        return cls(defaults, Path(models_dir) / USER_FILE, warnings)

    def _warn(self, messages: list[str]) -> None:
        """Each distinct warning once: a bad saved value read on every request must not pile up."""
        for message in messages:
            if message not in self._seen:
                self._seen.add(message)
                self.warnings.append(message)

    def _all_saved(self, strict: bool = False) -> dict:
        """Every model's entry; re-read only when the file changed (inode, mtime, size).

        A file that cannot be read is remembered too (not re-parsed per request); `strict` raises its error
        again, so that a save never overwrites a corrupt file that could not be moved aside.
        """
        try:
            st = self.user_file.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        cache = self._cache
        if cache is None or cache[0] != stamp:
            try:
                saved, error = (_read_yaml(self.user_file) if stamp else {}), None
            except SettingsError as exc:
                saved, error = {}, exc
                self._warn([str(exc)])
            saved = {str(k): v for k, v in saved.items() if isinstance(v, dict)}
            cache = self._cache = (stamp, saved, error)
        if strict and cache[2] is not None:
            raise cache[2]
        return cache[1]

    def saved_for(self, model: str) -> dict[str, Any]:
        """Only what was saved for `model` (empty if nothing); values that break a rule are dropped."""
        entry = self._all_saved().get(model, {})
        warnings: list[str] = []
        out = checked(entry, f"{self.user_file.name} [{model}]", warnings)
        self._warn(warnings)
        return out

    def for_model(self, model: str | None, folder_defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults < the model folder's own defaults < the model's saved settings: never another model's."""
        merged = dict(self.defaults)
        if folder_defaults:
            warnings: list[str] = []
            merged.update(checked(folder_defaults, f"{model}/generation_config.json", warnings))
            self._warn(warnings)
        if model:
            merged.update(self.saved_for(model))
        return merged

    def model_settings(self, model: str | None, folder_defaults: Mapping[str, Any] | None = None) -> ModelSettings:
        return ModelSettings.from_flat(self.for_model(model, folder_defaults))

    def save_for_model(self, model: str, values: dict[str, Any]) -> dict[str, Any]:
        """Check and store the known keys of `values` for `model`; other models' entries are kept."""
        entry = {k: v for k, v in ModelSettings.from_flat(values).to_flat().items() if k in values}
        with self._lock:   # read-modify-write: two sessions saving at once must not lose either
            # raises SettingsError (the file moved aside, or stuck) rather than overwrite
            everything = dict(self._all_saved(strict=True))
            everything[model] = entry
            write_yaml_atomic(self.user_file, everything)
            self._cache = None
        return entry

    def take_warnings(self) -> list[str]:
        out, self.warnings = self.warnings, []
        return out
