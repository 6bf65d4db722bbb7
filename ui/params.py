"""The generation parameters panel: its components, and conversion to GenerationParams and back."""
from __future__ import annotations

from typing import Any

import gradio as gr

from backend.generate import GenerationParams

# order matters: handlers take and return parameter values in this order
PARAM_KEYS = ("temperature", "top_p", "top_k", "min_p", "typical_p", "repetition_penalty",
              "no_repeat_ngram_size", "max_new_tokens", "seed", "context_length", "stop")


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


def panel_values(values: dict[str, Any]) -> list[Any]:
    """Settings values → component values, in PARAM_KEYS order."""
    return [format_stops(values.get(k)) if k == "stop" else values.get(k) for k in PARAM_KEYS]


def values_from_panel(panel: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """Component values (PARAM_KEYS order) → the settings dict, with numbers as their proper types."""
    out: dict[str, Any] = {}
    for key, value in zip(PARAM_KEYS, panel):
        if key == "stop":
            out[key] = parse_stops(value)
        elif key in ("top_k", "no_repeat_ngram_size", "max_new_tokens", "seed", "context_length"):
            out[key] = int(value) if value is not None else None
        else:
            out[key] = float(value) if value is not None else None
    return {k: v for k, v in out.items() if v is not None}


def generation_params(panel: list[Any] | tuple[Any, ...]) -> GenerationParams:
    """Raises GenerationError naming the bad value."""
    return GenerationParams.from_dict(values_from_panel(panel))


def build_params_panel(values: dict[str, Any]) -> list[gr.components.Component]:
    """The panel's components in PARAM_KEYS order, showing `values`."""
    v = dict(zip(PARAM_KEYS, panel_values(values)))
    return [
        gr.Slider(0.0, 2.0, v["temperature"], step=0.01, label="temperature", info="0 = greedy",
                  elem_id="p-temperature"),
        gr.Slider(0.0, 1.0, v["top_p"], step=0.01, label="top_p", elem_id="p-top_p"),
        gr.Slider(0, 200, v["top_k"], step=1, label="top_k", info="0 = off", elem_id="p-top_k"),
        gr.Slider(0.0, 0.99, v["min_p"], step=0.01, label="min_p", elem_id="p-min_p"),
        gr.Slider(0.01, 1.0, v["typical_p"], step=0.01, label="typical_p", elem_id="p-typical_p"),
        gr.Slider(0.5, 2.0, v["repetition_penalty"], step=0.01, label="repetition_penalty",
                  elem_id="p-repetition_penalty"),
        gr.Slider(0, 20, v["no_repeat_ngram_size"], step=1, label="no_repeat_ngram_size",
                  elem_id="p-no_repeat_ngram_size"),
        gr.Slider(1, 4096, v["max_new_tokens"], step=1, label="max_new_tokens", elem_id="p-max_new_tokens"),
        gr.Number(v["seed"], precision=0, label="seed", info="-1 = random", elem_id="p-seed"),
        gr.Number(v["context_length"], precision=0, minimum=0, label="context length",
                  info="0 = the model's maximum; longer prompts lose their start", elem_id="p-context_length"),
        gr.Textbox(v["stop"], lines=2, label="stop strings", info="one per line; write a newline as \\n",
                   elem_id="p-stop"),
    ]
