"""The generation parameters panel, built from the settings table: its components and their values."""
from __future__ import annotations

from typing import Any

import gradio as gr

from backend.settings import GENERATION_KEYS, GenerationParams
from backend.settings.table import rules


def escape_stop(stop: str) -> str:
    return stop.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def unescape_stop(line: str) -> str:
    out, i = [], 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line) and line[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[line[i + 1]])
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out)


def format_stops(stops: Any) -> str:
    """Stop strings as the textbox shows them: one per line, newlines written as \\n."""
    if isinstance(stops, str):
        stops = [stops]
    return "\n".join(escape_stop(s) for s in stops or [])


def parse_stops(text: str) -> list[str]:
    return [unescape_stop(line) for line in (text or "").splitlines() if line]


def panel_values(values: dict[str, Any]) -> dict[str, Any]:
    """Settings values → what the panel's components show, keyed by setting."""
    return {k: format_stops(values.get(k)) if k == "stop" else values.get(k) for k in GENERATION_KEYS}


def values_from_panel(panel: dict[str, Any]) -> dict[str, Any]:
    """The panel's component values → settings values (text lines become stop strings; None is dropped)."""
    return {k: parse_stops(v) if k == "stop" else v for k, v in panel.items() if v is not None}


def generation_params(panel: dict[str, Any]) -> GenerationParams:
    """Raises GenerationError naming the bad value."""
    return GenerationParams.from_dict(values_from_panel(panel))


def build_params_panel(values: dict[str, Any], unsupported: tuple[str, ...] = ()) -> dict[str, gr.components.Component]:
    """One component per generation setting, in the table's order, showing `values`; the engine's
    `unsupported` settings are shown greyed out with the reason."""
    shown = panel_values(values)
    panel = {}
    for key, _, rule in rules(GenerationParams):
        common = {"label": key.replace("_", " ") if key in ("context_length",) else key, "elem_id": f"p-{key}",
                  "info": "not supported by the remote engine" if key in unsupported else rule.info or None,
                  "interactive": False if key in unsupported else None}
        if rule.widget == "slider":
            panel[key] = gr.Slider(rule.minimum, rule.maximum, shown[key], step=rule.step, **common)
        elif rule.widget == "lines":
            panel[key] = gr.Textbox(shown[key], lines=2, **{**common, "label": key.replace("_", " ") + " strings"})
        else:
            panel[key] = gr.Number(shown[key], precision=0, minimum=rule.minimum, **common)
    return panel
