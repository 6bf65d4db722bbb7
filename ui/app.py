"""Builds the Blocks app from the three tabs and wires the events that cross tabs."""
from __future__ import annotations

from typing import Any

import gradio as gr

from backend.engine import Engine
from backend.settings import Settings
from ui.download_tab import DOWNLOAD_CSS, DownloadHandlers, build_download_box
from ui.generation_tab import GENERATION_CSS, GPU_QUEUE, GenerationHandlers, build_generation_tab
from ui.model_tab import ModelHandlers, build_model_tab

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
    initial = settings.for_model(loaded.name) if loaded else dict(settings.defaults)

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

        settings_outputs = [model.kernel, model.device, model.dtype, *gen.panel, gen.mode, gen.fim_order,
                            gen.preamble]
        load_inputs = [model.dropdown, model.kernel, model.device, model.dtype]
        load_outputs = [model.status, model.info]

        (model.dropdown.input(models.select, inputs=[model.dropdown, model.autoload],
                              outputs=[*settings_outputs, model.info, model.status], queue=False)
         .then(models.load_if_autoload, inputs=[model.dropdown, model.autoload, *load_inputs[1:]],
               outputs=load_outputs, **GPU_QUEUE))
        for button in (model.load, model.reload):
            # cancelling first lets the queued load start within one token of a running generation
            button.click(models.cancel_generation, queue=False).then(
                models.load, inputs=load_inputs, outputs=load_outputs, **GPU_QUEUE)
        model.unload.click(models.cancel_generation, queue=False).then(
            models.unload, inputs=model.dropdown, outputs=load_outputs, **GPU_QUEUE)
        model.save.click(models.save, inputs=[model.dropdown, model.kernel, model.device, model.dtype, gen.mode,
                                              gen.fim_order, gen.preamble, *gen.panel],
                         outputs=model.status, queue=False)

        def on_page_load() -> list[Any]:
            """Every new page shows the engine's current model and that model's saved settings."""
            current = engine.loaded
            name = current.name if current else None
            values = models.settings_for(name)
            note = models.warnings_note()
            ready = f"Ready: {name} is loaded." if name else "No model is loaded: choose one in the Model tab."
            return [gr.update(choices=engine.list_models(), value=name), *values, models.info(name),
                    f"{note} {models.current_status()}".strip(), ready]

        demo.load(on_page_load, outputs=[model.dropdown, *settings_outputs, model.info, model.status, gen.status],
                  queue=False)
    return demo
