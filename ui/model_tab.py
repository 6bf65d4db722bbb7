"""The Model tab: choose, inspect, load/unload/reload a model, and save its settings."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import gradio as gr
import torch

from backend.engine import Engine
from backend.prompts import DEFAULT_PREAMBLE
from backend.qlinear import registered_backends
from backend.errors import UserError
from backend.settings import LOAD_KEYS, LoadSettings, Settings
from ui.params import panel_values, values_from_panel

def _rule(key: str):
    return dataclasses.fields(LoadSettings)[LOAD_KEYS.index(key)].metadata["rule"]


DTYPES, COMPILE_CHOICES = list(_rule("dtype").choices), list(_rule("compile").choices)


def kernel_choices() -> list[str]:
    return ["auto"] + [b.NAME for b in registered_backends()]


def device_choices() -> list[tuple[str, str]]:
    cuda = [(f"cuda:{i} ({torch.cuda.get_device_name(i)})", f"cuda:{i}") for i in range(torch.cuda.device_count())]
    split = [("auto (split over GPUs and CPU)", "auto")] if cuda else []
    return [("auto-detect", "auto-detect"), ("cpu", "cpu")] + cuda + split


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def describe_error(exc: BaseException) -> str:
    """The UI's one translation of errors: a UserError's message says it all; anything else is a bug."""
    if isinstance(exc, UserError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc} (please report it)"


@dataclasses.dataclass
class ModelTab:
    """The components other tabs wire to."""
    dropdown: gr.Dropdown
    refresh: gr.Button
    autoload: gr.Checkbox
    load: gr.Button
    unload: gr.Button
    reload: gr.Button
    save: gr.Button
    kernel: gr.Dropdown
    device: gr.Dropdown
    dtype: gr.Dropdown
    compile: gr.Dropdown
    info: gr.Markdown
    status: gr.Markdown


class ModelHandlers:
    """Handlers for the Model tab; they close over the one Engine and the Settings."""

    def __init__(self, engine: Engine, settings: Settings, startup_note: str = "") -> None:
        self.engine = engine
        self.settings = settings
        self.startup_note = startup_note

    # ------------------------------------------------------------ reading

    def refresh(self, current: str | None) -> dict:
        names = self.engine.list_models()
        return gr.update(choices=names, value=current if current in names else None)

    def info(self, name: str | None) -> str:
        """Markdown: what quantize_config.json says, the memory estimate, and the load facts if loaded."""
        if not name:
            return "No model selected."
        try:
            model_info = self.engine.inspect(name)
        except Exception as exc:  # a broken folder is shown, never raised into the UI
            return f"**{name}** cannot be read: {describe_error(exc)}"
        summary, estimate = model_info.summary(), model_info.estimate_bytes
        rows = [f"| {key} | {value} |" for key, value in summary.items() if key != "memory_estimate_gb"]
        lines = [f"#### {name}", "", "| quantize_config / config | value |", "|---|---|", *rows,
                 f"| memory estimate (fp16) | {human_bytes(estimate)} |"]
        loaded = self.engine.loaded
        if loaded is not None and loaded.name == name:
            lines += ["", "| layer type | kernel |", "|---|---|"]
            lines += [f"| {layer} | {kernel} |" for layer, kernel in loaded.kernels.items()]
            lines += [f"\n**Self-check:** {note}" for note in loaded.checks]
            lines += ["", f"Loaded on **{loaded.device}** as **{loaded.dtype}** in {loaded.load_seconds:.2f} s; "
                          f"memory used: **{human_bytes(loaded.memory_bytes)}** (estimate {human_bytes(estimate)}); "
                          f"{loaded.decode}."]
        health = getattr(self.engine, "health", None)
        if health is not None:   # a remote engine: how each vLLM server is doing
            lines += ["", "| vLLM server | answers | serves | context | in flight |", "|---|---|---|---|---|"]
            lines += [f"| {h['url']} | {'yes' if h['healthy'] else 'no: ' + str(h['error'] or 'down')} | "
                      f"{h['served_model'] or '?'} | {h['max_model_len'] or '?'} | {h['in_flight']} |" for h in health()]
        return "\n".join(lines)

    def current_status(self) -> str:
        loaded = self.engine.loaded
        note = f"{self.startup_note} " if self.startup_note else ""
        if loaded is None:
            return note + "No model loaded: choose one above."
        return note + f"**{loaded.name}** is loaded ({loaded.device}, {loaded.dtype}, kernel {loaded.kernel})."

    def settings_for(self, name: str | None) -> dict[str, Any]:
        """Every setting's shown value for `name`: saved < the folder's own defaults < the app's defaults."""
        folder = {}
        if name:
            try:
                folder = self.engine.inspect(name).defaults
            except Exception:  # a broken folder is reported by info(); its settings are the defaults
                folder = {}
        values = self.settings.for_model(name, folder)
        return {**{k: values[k] for k in LOAD_KEYS}, **panel_values(values), "mode": values["mode"],
                "fim_order": values["fim_order"], "assistant_preamble": values["assistant_preamble"] or DEFAULT_PREAMBLE}

    def warnings_note(self) -> str:
        return " ".join(f"**Settings warning:** {w}" for w in self.settings.take_warnings())

    # ------------------------------------------------------------ acting

    def select(self, name: str | None, autoload: bool) -> dict[str, Any]:
        """A model was chosen: its settings (never the previous model's), its facts, a status line."""
        values = self.settings_for(name)
        warning = self.warnings_note()
        if autoload and name:
            self.engine.cancel_all()   # the load queued next must not wait for a long generation
            status = f"Loading **{name}** …"
        else:
            status = f"Selected **{name}**; press Load." if name else "No model selected."
        return {**values, "info": self.info(name), "status": f"{warning} {status}".strip()}

    def load(self, name: str | None, kernel: str, device: str, dtype: str,
             compile: str = "auto") -> Iterator[dict[str, str]]:
        """Yields status and info; a failure leaves the app usable and says why."""
        if not name:
            yield {"status": "Choose a model first.", "info": self.info(name)}
            return
        yield {"status": f"Loading **{name}** (kernel {kernel}, device {device}, dtype {dtype}) …",
               "info": self.info(name)}
        try:
            loaded = self.engine.load(name, kernel=kernel, device=device, dtype=dtype, compile=compile)
        except Exception as exc:
            now = self.engine.loaded     # a failed load keeps the old model when both fitted
            state = f"**{now.name}** is still loaded" if now else "no model is loaded now"
            yield {"status": f"**Failed** to load **{name}**: {describe_error(exc)} — {state}; "
                             f"choose another model or change the options and press Load.", "info": self.info(name)}
            return
        yield {"status": f"Loaded **{loaded.name}** in {loaded.load_seconds:.2f} s on {loaded.device} "
                         f"({loaded.dtype}), memory used {human_bytes(loaded.memory_bytes)}; {loaded.decode}. "
                         f"{loaded.note}".strip(),
               "info": self.info(name)}

    def load_if_autoload(self, name: str | None, autoload: bool, kernel: str, device: str, dtype: str,
                         compile: str = "auto") -> Iterator[dict[str, str]]:
        if autoload and name:
            yield from self.load(name, kernel, device, dtype, compile)

    def cancel_generation(self) -> None:
        self.engine.cancel_all()

    def unload(self, name: str | None) -> dict[str, str]:
        loaded = self.engine.loaded
        self.engine.unload()
        message = f"Unloaded **{loaded.name}**." if loaded else "No model was loaded."
        return {"status": message, "info": self.info(name)}

    def save(self, name: str | None, kernel: str, device: str, dtype: str, mode: str, fim_order: str,
             assistant_preamble: str, params: dict[str, Any], compile: str = "auto") -> dict[str, str]:
        if not name:
            return {"status": "Choose a model before saving its settings."}
        values = {"kernel": kernel, "device": device, "dtype": dtype, "compile": compile, "mode": mode,
                  "fim_order": fim_order, **values_from_panel(params)}
        if assistant_preamble and assistant_preamble.strip() != DEFAULT_PREAMBLE.strip():
            values["assistant_preamble"] = assistant_preamble
        try:
            self.settings.save_for_model(name, values)
        except (UserError, OSError) as exc:
            return {"status": f"**Settings not saved:** {exc}"}
        return {"status": f"Saved settings for **{name}** to {self.settings.user_file.name}."}


def build_model_tab(handlers: ModelHandlers) -> ModelTab:
    """Lay out the tab; events that touch other tabs are wired in ui.app."""
    names = handlers.engine.list_models()
    loaded = handlers.engine.loaded
    with gr.Row(equal_height=True):
        dropdown = gr.Dropdown(names, value=loaded.name if loaded else None, label="Model", scale=4,
                               elem_id="model-select", allow_custom_value=False)
        refresh = gr.Button("Refresh", scale=0, min_width=110, elem_id="model-refresh")
        autoload = gr.Checkbox(True, label="Autoload the model on selection", scale=1, elem_id="autoload")
    with gr.Row():
        load = gr.Button("Load", variant="primary", elem_id="model-load")
        unload = gr.Button("Unload", elem_id="model-unload")
        reload = gr.Button("Reload the model", elem_id="model-reload")
        save = gr.Button("Save settings for this model", elem_id="model-save")
    status = gr.Markdown(handlers.current_status(), elem_id="model-status")
    with gr.Row():
        with gr.Column(scale=1):
            kernel = gr.Dropdown(kernel_choices(), value="auto", label="Kernel", allow_custom_value=True,
                                 info="auto takes the fastest kernel that supports the checkpoint",
                                 elem_id="model-kernel")
            device = gr.Dropdown(device_choices(), value="auto-detect", label="Device", allow_custom_value=True,
                                 elem_id="model-device")
            dtype = gr.Dropdown(DTYPES, value="auto", label="Compute dtype", elem_id="model-dtype",
                                info="auto: float16 on GPU, bfloat16 on CPU")
            compile = gr.Dropdown(COMPILE_CHOICES, value="auto", label="Compiled decode", elem_id="model-compile",
                                  info=_rule("compile").info)
        with gr.Column(scale=2):
            info = gr.Markdown(handlers.info(loaded.name if loaded else None), elem_id="model-info")
    refresh.click(handlers.refresh, inputs=dropdown, outputs=dropdown, queue=False)
    return ModelTab(dropdown, refresh, autoload, load, unload, reload, save, kernel, device, dtype, compile, info,
                    status)
