"""Builds the Blocks app from the three tabs and wires the events that cross tabs."""
from __future__ import annotations

from typing import Any

import gradio as gr

from backend.engine import Engine
from backend.settings import Settings
from ui.download_tab import DOWNLOAD_CSS, DownloadHandlers, build_download_box
from ui.generation_tab import GENERATION_CSS, GPU_QUEUE, GenerationHandlers, build_generation_tab
from ui.model_tab import ModelHandlers, build_model_tab
from ui.wiring import on

TITLE = "StarCoder WebUI"
CSS = DOWNLOAD_CSS + GENERATION_CSS + """
#model-status { min-height: 1.5em; }
#gen-status { min-height: 1.5em; font-size: 0.9em; }
#model-info table { font-size: 0.85em; margin: 0.3em 0; }
#model-info th, #model-info td { padding: 0.15em 0.8em; }
"""


def theme() -> gr.themes.Theme:
    return gr.themes.Default(primary_hue="orange", secondary_hue="blue")


def build_ui(engine: Engine, settings: Settings, startup_note: str = "") -> gr.Blocks:
    """The whole app; handlers close over `engine` and `settings`, nothing lives in module globals."""
    models = ModelHandlers(engine, settings, startup_note)
    downloads = DownloadHandlers(engine)
    generation = GenerationHandlers(engine)
    loaded = engine.loaded
    initial = models.settings_for(loaded.name if loaded else None)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Text Generation", id="generation", elem_id="tab-generation"):
                gen = build_generation_tab(generation, initial)
            with gr.Tab("Model", id="model", elem_id="tab-model"):
                model = build_model_tab(models)
                with gr.Accordion("Download custom model", open=False, elem_id="model-download-box"):
                    build_download_box(downloads, model.dropdown, compact=True, prefix="model-dl")
            with gr.Tab("Download", id="download", elem_id="tab-download"):
                gr.Markdown("Download a GPTQ model from the Hugging Face Hub into the models folder. "
                            "Use `user/model` or `user/model:branch`.")
                build_download_box(downloads, model.dropdown, compact=False, prefix="dl")

        # every setting's component by its key in the settings table
        setting_components = {"kernel": model.kernel, "device": model.device, "dtype": model.dtype,
                              "compile": model.compile, **gen.panel,
                              "mode": gen.mode, "fim_order": gen.fim_order, "assistant_preamble": gen.preamble}
        load_inputs = {"name": model.dropdown, "kernel": model.kernel, "device": model.device, "dtype": model.dtype,
                       "compile": model.compile}
        load_outputs = {"status": model.status, "info": model.info}

        selected = on(model.dropdown.input, models.select, {"name": model.dropdown, "autoload": model.autoload},
                      {**setting_components, **load_outputs}, queue=False)
        on(selected.then, models.load_if_autoload, {**load_inputs, "autoload": model.autoload}, load_outputs,
           **GPU_QUEUE)
        for button in (model.load, model.reload):
            # cancelling first lets the queued load start within one token of a running generation
            on(button.click(models.cancel_generation, queue=False).then, models.load, load_inputs, load_outputs,
               **GPU_QUEUE)
        on(model.unload.click(models.cancel_generation, queue=False).then, models.unload, {"name": model.dropdown},
           load_outputs, **GPU_QUEUE)
        on(model.save.click, models.save,
           {"name": model.dropdown, "kernel": model.kernel, "device": model.device, "dtype": model.dtype,
            "compile": model.compile, "mode": gen.mode, "fim_order": gen.fim_order, "assistant_preamble": gen.preamble, "params": gen.panel},
           {"status": model.status}, queue=False)

        def on_page_load() -> dict[str, Any]:
            """Every new page shows the engine's current model and that model's saved settings."""
            current = engine.loaded
            name = current.name if current else None
            values = models.settings_for(name)
            note = models.warnings_note()
            ready = f"Ready: {name} is loaded." if name else "No model is loaded: choose one in the Model tab."
            return {"name": gr.update(choices=engine.list_models(), value=name), **values, "info": models.info(name),
                    "status": f"{note} {models.current_status()}".strip(), "ready": ready}

        on(demo.load, on_page_load, None,
           {"name": model.dropdown, **setting_components, **load_outputs, "ready": gen.status}, queue=False)
    return demo
