"""The one table of settings: every key, its default, its rule and how the UI shows it.

`settings.yaml`, the per-model saved settings, the UI's parameter panel and the API's sampling fields
all derive from the dataclasses below. Adding a sampling parameter means adding one `setting(...)`
line to `GenerationParams` and teaching the sampler; nothing else is written by hand.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from backend.errors import GenerationError, UserError


class SettingsError(UserError, ValueError):
    """A setting or a settings file that cannot be used; the message names the key or file and the fix."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one setting is checked and shown: `check` on the coerced value, `rule` in the error message."""
    check: Callable[[Any], bool] | None = None
    rule: str = ""
    widget: str = "number"          # slider | number | dropdown | radio | text | lines
    minimum: float | None = None    # the widget's range, which may be narrower than what is valid
    maximum: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()
    info: str = ""


def setting(default: Any, **rule: Any) -> Any:
    choices = rule.get("choices", ())
    if choices and "check" not in rule:
        values = tuple(c[1] if isinstance(c, tuple) else c for c in choices)
        rule["check"] = values.__contains__
        rule.setdefault("rule", "one of " + ", ".join(map(str, values)))
    return dataclasses.field(default=default, metadata={"rule": Rule(**rule)})


def coerce(cls: type, key: str, value: Any) -> Any:
    """`value` as field `key` of `cls` expects it; a wrong type or a broken rule names the key and the fix."""
    field = {f.name: f for f in dataclasses.fields(cls)}[key]
    kind = type(field.default)
    try:
        if kind is tuple:
            value = tuple(s for s in ((value,) if isinstance(value, str) else map(str, value)) if s)
        elif kind is bool:
            if not isinstance(value, bool):
                raise TypeError
        elif kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            value = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise TypeError
            value = float(value)
        elif kind is str:
            if not isinstance(value, str):
                raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise SettingsError(f"{key} must be {_kind_name(kind)}, got {value!r}") from None
    rule: Rule = field.metadata["rule"]
    if rule.check is not None and not rule.check(value):
        raise SettingsError(f"{key} must be {rule.rule}, got {value!r}")
    return value


def _kind_name(kind: type) -> str:
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
            tuple: "a list of strings"}.get(kind, kind.__name__)


class _Group:
    """Shared by the setting groups: construction from a mapping with every value checked."""
    _error: typing.ClassVar[type[UserError]] = SettingsError

    def __post_init__(self) -> None:
        try:
            for f in dataclasses.fields(self):
                object.__setattr__(self, f.name, coerce(type(self), f.name, getattr(self, f.name)))
        except SettingsError as exc:
            raise self._error(str(exc)) from None

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: Any = None):
        """Known keys of `values` over `base` (or the defaults); None means "not given"."""
        known = {k: v for k, v in values.items() if k in cls.keys() and v is not None}
        return dataclasses.replace(base, **known) if base is not None else cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class LoadSettings(_Group):
    """How a model is loaded (the Model tab)."""
    kernel: str = setting("auto", widget="dropdown", check=lambda v: bool(v), rule="auto or a backend name",
                          info="auto takes the fastest kernel that supports the checkpoint")
    device: str = setting("auto-detect", widget="dropdown", check=lambda v: bool(v),
                          rule="auto-detect, cpu, cuda:N or auto")
    dtype: str = setting("auto", widget="dropdown", choices=("auto", "float16", "bfloat16", "float32"),
                         info="auto: float16 on GPU, bfloat16 on CPU")
    compile: str = setting("auto", widget="dropdown", choices=("auto", "on", "off"),
                           info="decode through a compiled step with a static cache (CUDA graphs on GPU); "
                                "auto: where it measured faster")


@dataclasses.dataclass(frozen=True)
class GenerationParams(_Group):
    """Sampling and length; field order is the order of the UI's parameter panel."""
    _error: typing.ClassVar[type[UserError]] = GenerationError
    temperature: float = setting(0.2, check=lambda v: v >= 0, rule="≥ 0 (0 means greedy)", widget="slider",
                                 minimum=0.0, maximum=2.0, step=0.01, info="0 = greedy")
    top_p: float = setting(0.95, check=lambda v: 0 < v <= 1, rule="in (0, 1]", widget="slider",
                           minimum=0.0, maximum=1.0, step=0.01)
    top_k: int = setting(0, check=lambda v: v >= 0, rule="≥ 0 (0 disables it)", widget="slider",
                         minimum=0, maximum=200, step=1, info="0 = off")
    min_p: float = setting(0.0, check=lambda v: 0 <= v < 1, rule="in [0, 1)", widget="slider",
                           minimum=0.0, maximum=0.99, step=0.01)
    typical_p: float = setting(1.0, check=lambda v: 0 < v <= 1, rule="in (0, 1]", widget="slider",
                               minimum=0.01, maximum=1.0, step=0.01)
    repetition_penalty: float = setting(1.0, check=lambda v: 0 < v <= 1e6, rule="in (0, 1e6] (1 disables it)",
                                        widget="slider",
                                        minimum=0.5, maximum=2.0, step=0.01)
    no_repeat_ngram_size: int = setting(0, check=lambda v: v >= 0, rule="≥ 0", widget="slider",
                                        minimum=0, maximum=20, step=1)
    max_new_tokens: int = setting(128, check=lambda v: v >= 1, rule="at least 1", widget="slider",
                                  minimum=1, maximum=4096, step=1)
    seed: int = setting(-1, check=lambda v: -1 <= v < 2**64, rule="-1 (random) or a seed in [0, 2^64)",
                        info="-1 = random")
    context_length: int = setting(0, check=lambda v: v >= 0, rule="≥ 0 (0 means the model's maximum)",
                                  minimum=0, info="0 = the model's maximum; longer prompts lose their start")
    stop: tuple[str, ...] = setting((), widget="lines", info="one per line; write a newline as \\n")


@dataclasses.dataclass(frozen=True)
class PromptSettings(_Group):
    """How the Text Generation tab builds prompts."""
    mode: str = setting("completion", widget="radio", choices=("completion", "fim", "assistant"))
    fim_order: str = setting("psm", widget="radio", choices=("psm", "spm"))
    assistant_preamble: str = setting("", widget="lines", info="empty: the built-in tech-assistant preamble")


@dataclasses.dataclass(frozen=True)
class ServerSettings(_Group):
    """Where generation runs, for the whole app (not saved per model): this process or vLLM servers."""
    engine: str = setting("local", widget="radio", choices=("local", "remote"),
                          info="remote: generation runs on vLLM servers (remote_urls)")
    remote_urls: tuple[str, ...] = setting((), widget="lines", info="base URLs of the vLLM servers, one per replica")
    remote_api_key: str = setting("", widget="text", info="the key the vLLM servers expect, if any")
    remote_model: str = setting("", widget="text", info="served model name; empty: the one the server lists")
    remote_timeout: float = setting(60.0, check=lambda v: v > 0, rule="> 0 seconds",
                                    info="seconds to wait for a vLLM server")


GROUPS = (LoadSettings, GenerationParams, PromptSettings)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Everything saved per model: load settings, generation parameters and the prompt mode."""
    load: LoadSettings = dataclasses.field(default_factory=LoadSettings)
    generation: GenerationParams = dataclasses.field(default_factory=GenerationParams)
    prompt: PromptSettings = dataclasses.field(default_factory=PromptSettings)

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], base: "ModelSettings | None" = None) -> "ModelSettings":
        """Flat keys (as in settings.yaml) over `base`; unknown keys are ignored, bad values raise."""
        base = base or cls()
        try:
            return cls(*(group.from_dict(values, getattr(base, name)) for name, group in _NAMED_GROUPS))
        except UserError as exc:
            raise SettingsError(str(exc)) from None

    def to_flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, _ in _NAMED_GROUPS:
            out.update(getattr(self, name).to_dict())
        return out


_NAMED_GROUPS = (("load", LoadSettings), ("generation", GenerationParams), ("prompt", PromptSettings))
LOAD_KEYS, GENERATION_KEYS, PROMPT_KEYS = (g.keys() for g in GROUPS)
MODEL_KEYS = LOAD_KEYS + GENERATION_KEYS + PROMPT_KEYS
SERVER_KEYS = ServerSettings.keys()
DEFAULTS: dict[str, Any] = {**ModelSettings().to_flat(), **ServerSettings().to_dict()}
assert len(set(MODEL_KEYS + SERVER_KEYS)) == len(MODEL_KEYS + SERVER_KEYS), "a key may belong to one group only"


def check_value(key: str, value: Any) -> Any:
    """`value` as setting `key` holds it (lists for tuples); raises SettingsError naming the key and the fix."""
    group = next(g for g in (*GROUPS, ServerSettings) if key in g.keys())
    try:
        return group.from_dict({key: value}).to_dict()[key]
    except UserError as exc:
        raise SettingsError(str(exc)) from None


def rules(group: type) -> Iterator[tuple[str, Any, Rule]]:
    """(key, default, rule) of every setting of `group`, in order: what a form or schema is built from."""
    for f in dataclasses.fields(group):
        yield f.name, f.default, f.metadata["rule"]


def python_type(group: type, key: str) -> type:
    """The field's Python type, for schemas built from the table."""
    return typing.get_type_hints(group)[key]


def defaults_yaml() -> str:
    """settings.yaml as the table defines it: `python -m backend.settings > settings.yaml` regenerates it."""
    import yaml

    lines = ["# The app's defaults, used for every model that has no saved settings of its own.",
             "# Order: these < the model folder's generation_config.json < what was saved for the model",
             "# (models/config-user.yaml). Generated from backend/settings/table.py; keys not listed there",
             "# are ignored.", ""]
    for title, group in (("loading", LoadSettings), ("generation", GenerationParams),
                         ("the Text Generation tab", PromptSettings),
                         ("where generation runs (the whole app, never saved per model)", ServerSettings)):
        lines.append(f"# {title}")
        for key, default, rule in rules(group):
            value = yaml.safe_dump({key: list(default) if isinstance(default, tuple) else default},
                                   default_flow_style=True, allow_unicode=True).strip().strip("{}")
            note = rule.info or rule.rule
            lines.append(f"{value:<30}# {note}" if note else value)
        lines.append("")
    return "\n".join(lines)
